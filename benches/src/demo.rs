//! Demo mode: a gentle, endless stream from a few dozen devices of a `demo` tenant, so a new user
//! of `dev/stack run` sees live data at once. The tenant and devices are created idempotently
//! (credentials rotated on each start, since only digests are stored). While ingest is starting
//! or away, each device backs off (1 s doubling to 30 s) and the state change is logged once.

use crate::seed;
use crate::sim::{MotionLimits, Vehicle};
use crate::wire;
use crate::LoadgenError;
use gps_domain::fix::now_millis;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Ingest HTTP base URL.
    pub ingest_url: String,
    /// Tenant name.
    pub tenant: String,
    /// Number of devices.
    pub devices: usize,
    /// Seconds between two fixes of one device.
    pub interval: Duration,
    /// Centre of the fleet.
    pub lat: f64,
    /// Centre of the fleet.
    pub lon: f64,
}

/// Set once to stop the demo (it runs until the process is stopped; tests stop it early).
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// Ask the demo to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether it was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Run the demo until `stop` is set; returns how many fixes were acknowledged.
pub async fn run(config: DemoConfig, pool: PgPool, stop: CancelFlag) -> Result<u64, LoadgenError> {
    let fleet = seed::fleet(&pool, &config.tenant, "demo", config.devices).await?;
    tracing::info!(tenant = %config.tenant, devices = fleet.devices.len(), ingest = %config.ingest_url, "demo fleet ready");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| LoadgenError::Setup(e.to_string()))?;
    let acked = Arc::new(AtomicU64::new(0));
    let reachable = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();
    let step = config.interval.as_millis().max(1) as i64;
    for (i, device) in fleet.devices.into_iter().enumerate() {
        let mut vehicle = Vehicle::new(
            i as u64,
            config.lat,
            config.lon,
            now_millis() - step,
            MotionLimits::default(),
        );
        let (client, acked, reachable, stop) = (
            client.clone(),
            acked.clone(),
            reachable.clone(),
            stop.clone(),
        );
        let url = format!("{}/v1/fixes", config.ingest_url.trim_end_matches('/'));
        let interval = config.interval;
        tasks.push(tokio::spawn(async move {
            // Spread the fleet's sends over the interval instead of a burst per tick.
            tokio::time::sleep(interval.mul_f64(i as f64 / 37.0 % 1.0)).await;
            let mut backoff = Duration::from_secs(1);
            // A device reports where it is now: the simulation advances by real elapsed time.
            let mut next = move || {
                let dt = (now_millis() - vehicle.clock()).max(1);
                vehicle.step(dt)
            };
            let mut fix = next();
            while !stop.is_cancelled() {
                let result = client
                    .post(&url)
                    .bearer_auth(&device.token)
                    .header("content-type", "application/json")
                    .body(wire::json_body(std::slice::from_ref(&fix)))
                    .send()
                    .await;
                let ok = match result {
                    Ok(r) if r.status().is_success() => true,
                    Ok(r) => {
                        // 4xx other than overload means we send something wrong: say so.
                        let status = r.status();
                        if status.is_client_error() && status.as_u16() != 429 {
                            let body = r.text().await.unwrap_or_default();
                            tracing::warn!(device = %device.uid, %status, body = %body, "demo fix refused");
                            // Do not resend a fix ingest refuses; move on to the next one.
                            fix = next();
                        }
                        false
                    }
                    Err(_) => false,
                };
                if ok {
                    acked.fetch_add(1, Ordering::Relaxed);
                    if !reachable.swap(true, Ordering::SeqCst) {
                        tracing::info!(ingest = %url, "ingest reachable, demo stream flowing");
                    }
                    backoff = Duration::from_secs(1);
                    tokio::time::sleep(interval).await;
                    fix = next();
                } else {
                    if reachable.swap(false, Ordering::SeqCst) {
                        tracing::warn!(ingest = %url, "ingest not answering yet; demo retries with backoff");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }));
    }
    let progress = {
        let acked = acked.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut last = 0;
            while !stop.is_cancelled() {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let now = acked.load(Ordering::Relaxed);
                if now != last {
                    tracing::info!(fixes = now, "demo stream");
                    last = now;
                }
            }
        })
    };
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    Ok(acked.load(Ordering::Relaxed))
}
