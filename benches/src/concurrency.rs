//! `loadgen concurrency`: single-fix `POST /v1/fixes` requests at a fixed number in flight (each
//! in-flight slot a device of its own that sends its next request as soon as the previous one
//! was answered), level after level: requests per second and the client-side latency of each
//! acknowledgement (p50 / p99). This is what the producer's lane policy is judged by: a lone
//! request should answer in one broker round trip, a crowd at the batching lane's rate.

use crate::seed;
use crate::stats::Latency;
use crate::LoadgenError;
use serde::Serialize;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone)]
pub struct ConcurrencyConfig {
    /// Ingest HTTP base URL.
    pub ingest_url: String,
    /// Requests in flight, one level after the other.
    pub levels: Vec<usize>,
    /// Measured seconds per level (after one second of warm-up).
    pub duration: Duration,
}

/// One level's figures.
#[derive(Debug, Clone, Serialize)]
pub struct LevelFigure {
    /// Requests in flight.
    pub in_flight: usize,
    /// Requests answered 202 in the measured window.
    pub acknowledged: u64,
    /// Requests answered otherwise, or failed.
    pub errors: u64,
    /// Acknowledged requests per second.
    pub requests_per_sec: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// A Markdown table of the levels.
pub fn table(levels: &[LevelFigure]) -> String {
    let mut out = String::from(
        "| in flight | requests/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|\n",
    );
    for l in levels {
        out.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.2} | {} |\n",
            l.in_flight, l.requests_per_sec, l.p50_ms, l.p99_ms, l.errors
        ));
    }
    out
}

/// Seed a fleet of as many devices as the highest level and measure every level.
pub async fn run(
    pool: &PgPool,
    config: &ConcurrencyConfig,
) -> Result<Vec<LevelFigure>, LoadgenError> {
    let most = config.levels.iter().copied().max().unwrap_or(1).max(1);
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let fleet = seed::fleet(
        pool,
        &format!("concurrency-{run_id}"),
        &format!("cc{run_id}"),
        most,
    )
    .await?;
    let tokens: Arc<Vec<String>> = Arc::new(fleet.devices.into_iter().map(|d| d.token).collect());
    let mut figures = Vec::new();
    for &level in &config.levels {
        figures.push(level_run(config, tokens.clone(), level.max(1)).await);
    }
    Ok(figures)
}

async fn level_run(
    config: &ConcurrencyConfig,
    tokens: Arc<Vec<String>>,
    level: usize,
) -> LevelFigure {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(level)
        .build()
        .expect("http client");
    let url = format!("{}/v1/fixes", config.ingest_url.trim_end_matches('/'));
    let warm_until = Instant::now() + Duration::from_secs(1);
    let end = warm_until + config.duration;
    let slots = (0..level).map(|slot| {
        let (client, url, tokens) = (client.clone(), url.clone(), tokens.clone());
        tokio::spawn(async move {
            let mut latency = Latency::default();
            let (mut acknowledged, mut errors) = (0u64, 0u64);
            let mut time = gps_domain::fix::now_millis() + slot as i64;
            while Instant::now() < end {
                time += 1_000;
                let body = format!(r#"{{"time":{time},"lat":52.52,"lon":13.405,"speed":3.5}}"#);
                let started = Instant::now();
                let outcome = client
                    .post(&url)
                    .bearer_auth(&tokens[slot])
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let ok = matches!(&outcome, Ok(r) if r.status().as_u16() == 202);
                if started >= warm_until {
                    if ok {
                        acknowledged += 1;
                        latency.record_ms(started.elapsed().as_secs_f64() * 1e3);
                    } else {
                        errors += 1;
                    }
                }
            }
            (latency, acknowledged, errors)
        })
    });
    let mut latency = Latency::default();
    let (mut acknowledged, mut errors) = (0, 0);
    for slot in futures::future::join_all(slots).await {
        match slot {
            Ok((l, a, e)) => {
                latency.merge(&l);
                acknowledged += a;
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    LevelFigure {
        in_flight: level,
        acknowledged,
        errors,
        requests_per_sec: acknowledged as f64 / config.duration.as_secs_f64(),
        p50_ms: latency.quantile_ms(0.5),
        p99_ms: latency.quantile_ms(0.99),
    }
}
