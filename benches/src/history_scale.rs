//! `loadgen history-scale`: history reads as the `positions` table grows. A fresh, migrated
//! database gets a year of daily partitions, a tenant of `devices` devices and their latest
//! positions; the table is then grown by binary `COPY` (the processor's own encoder,
//! [`gps_store::positions::encode_copy`]) to each size in turn, and at each size the real
//! query-api binary (started on the scratch database) answers the same five reads, `runs` times
//! each after one warm-up: one device's day as JSON, a month of it bucketed hourly, the latest
//! positions of every device, an area (bbox) over one hour and a summary over a month.
//!
//! What is read stays the same at every size, so a cost that grows is the table's, not the
//! answer's: one *probe* device has a fix every 10 s over the last 30 days (259,200 rows,
//! loaded first), the other devices (the *filler*) share the remaining rows, spread evenly over
//! the year (a low-discrepancy sequence, so every size is uniform) and placed away from the
//! probe, whose bounding box they never enter. The area query still scans the tenant's rows of
//! its hour (its index is by tenant and time), so its cost follows the rows per hour.

use crate::seed;
use crate::LoadgenError;
use gps_domain::{Fix, Protocol};
use gps_runtime::config::{DatabaseArgs, RedisArgs};
use gps_store::positions::{copy_into, encode_copy, StoredFix};
use gps_store::principal::JwtKeys;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const DAY_MS: i64 = 86_400_000;
const YEAR_MS: i64 = 365 * DAY_MS;
/// The probe device reports every 10 s over the last 30 days.
const PROBE_INTERVAL_MS: i64 = 10_000;
const PROBE_DAYS: i64 = 30;
/// The fractional part of the golden ratio: `j * PHI mod 1` spreads any prefix of `j` evenly.
const PHI: f64 = 0.618_033_988_749_894_9;

/// What to load and measure.
#[derive(Debug, Clone)]
pub struct HistoryScaleConfig {
    /// The server; the scratch database is created on it.
    pub database: DatabaseArgs,
    /// query-api's Redis.
    pub redis: RedisArgs,
    /// Directory of the `query-api` binary.
    pub bin_dir: PathBuf,
    /// Table sizes to measure at, rows, ascending.
    pub sizes: Vec<u64>,
    /// Devices of the tenant (the probe and the filler).
    pub devices: usize,
    /// Measured runs per read and size (after one warm-up).
    pub runs: usize,
    /// Rows per COPY statement.
    pub chunk: usize,
    /// Keep the scratch database afterwards (for `EXPLAIN ANALYZE` by hand).
    pub keep: bool,
}

/// One read at one size.
#[derive(Debug, Clone, Serialize)]
pub struct ReadFigure {
    /// Rows in `positions` when measured.
    pub table_rows: u64,
    /// Which read.
    pub read: &'static str,
    /// Bytes of one answer.
    pub answer_bytes: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
}

/// The figures, and how long each load took.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryScale {
    /// The scratch database (dropped unless kept).
    pub database: String,
    /// Per size: rows, seconds of COPY (and ANALYZE) to reach it from the previous size.
    pub loads: Vec<(u64, f64)>,
    /// The reads.
    pub reads: Vec<ReadFigure>,
}

impl HistoryScale {
    /// A Markdown table: one row per read, one column per size (p50 / p95 ms).
    pub fn table(&self) -> String {
        let sizes: Vec<u64> = self.loads.iter().map(|(rows, _)| *rows).collect();
        let mut out = String::from("| read |");
        for rows in &sizes {
            out.push_str(&format!(" {} rows: p50 / p95 ms |", human(*rows)));
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(sizes.len()));
        let mut reads: Vec<&'static str> = Vec::new();
        for r in &self.reads {
            if !reads.contains(&r.read) {
                reads.push(r.read);
            }
        }
        for read in reads {
            out.push_str(&format!("\n| {read} |"));
            for rows in &sizes {
                match self
                    .reads
                    .iter()
                    .find(|r| r.read == read && r.table_rows == *rows)
                {
                    Some(r) => out.push_str(&format!(" {:.1} / {:.1} |", r.p50_ms, r.p95_ms)),
                    None => out.push_str(" – |"),
                }
            }
        }
        out.push('\n');
        out
    }
}

fn human(rows: u64) -> String {
    match rows {
        r if r >= 1_000_000 && r % 1_000_000 == 0 => format!("{}M", r / 1_000_000),
        r if r >= 1_000 && r % 1_000 == 0 => format!("{}k", r / 1_000),
        r => r.to_string(),
    }
}

/// Load and measure; the scratch database is dropped afterwards unless `keep`.
pub async fn run(config: &HistoryScaleConfig) -> Result<HistoryScale, LoadgenError> {
    let admin = gps_runtime::db::connect(&config.database).await?;
    let name = format!("gps_history_{}", &Uuid::new_v4().simple().to_string()[..12]);
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let scratch = DatabaseArgs {
        database_url: SecretString::from(gps_runtime::db::url_with_database(
            config.database.database_url.expose_secret(),
            &name,
        )),
        max_connections: 4,
    };
    let result = measure(config, &scratch, &name).await;
    if !config.keep {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await;
    }
    result
}

/// The fleet, the anchor time and the query-api of one measurement.
struct Bench {
    pool: sqlx::PgPool,
    tenant: Uuid,
    probe: Uuid,
    filler: Vec<Uuid>,
    /// The end of the loaded year (an hour boundary before now).
    end_ms: i64,
}

async fn measure(
    config: &HistoryScaleConfig,
    scratch: &DatabaseArgs,
    name: &str,
) -> Result<HistoryScale, LoadgenError> {
    let pool = gps_runtime::db::connect(scratch).await?;
    gps_runtime::db::migrate(&pool).await?;
    sqlx::query(
        "SELECT gps_ensure_position_partitions((now() AT TIME ZONE 'UTC')::date - 366,
                                               (now() AT TIME ZONE 'UTC')::date + 1)",
    )
    .execute(&pool)
    .await?;
    let fleet = seed::fleet(&pool, "history-scale", "hs", config.devices.max(2)).await?;
    let now = gps_domain::fix::now_millis();
    let bench = Bench {
        pool,
        tenant: fleet.tenant_id,
        probe: fleet.devices[0].id,
        filler: fleet.devices[1..].iter().map(|d| d.id).collect(),
        end_ms: now.div_euclid(3_600_000) * 3_600_000 - 3_600_000,
    };
    let secret = SecretString::from(Uuid::new_v4().simple().to_string().repeat(2));
    let token = seed::live_viewer_token(
        &bench.pool,
        &JwtKeys::new(&secret),
        bench.tenant,
        "history-scale@loadgen.invalid",
        86_400,
    )
    .await?;
    let api = QueryApi::start(config, scratch, &secret).await?;
    let client = reqwest::Client::new();

    let mut loaded = bench.load_probe(config.chunk).await?;
    bench.load_latest().await?;
    let mut result = HistoryScale {
        database: name.to_owned(),
        loads: Vec::new(),
        reads: Vec::new(),
    };
    let outcome = async {
        for &size in &config.sizes {
            let started = Instant::now();
            loaded = bench.grow(loaded, size, config.chunk).await?;
            sqlx::query("ANALYZE positions")
                .execute(&bench.pool)
                .await?;
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(rows = loaded, secs, "table grown");
            result.loads.push((loaded, secs));
            for (read, path) in bench.reads() {
                let figure = api
                    .time(&client, &token, &path, config.runs)
                    .await
                    .map_err(|e| LoadgenError::Setup(format!("{read}: {e}")))?;
                tracing::info!(
                    read,
                    rows = loaded,
                    p50_ms = figure.0,
                    p95_ms = figure.1,
                    "read timed"
                );
                result.reads.push(ReadFigure {
                    table_rows: loaded,
                    read,
                    answer_bytes: figure.2,
                    p50_ms: figure.0,
                    p95_ms: figure.1,
                });
            }
        }
        Ok::<_, LoadgenError>(())
    }
    .await;
    api.stop().await;
    bench.pool.close().await;
    outcome.map(|()| result)
}

impl Bench {
    fn stored(&self, device: Uuid, fix: Fix) -> StoredFix {
        StoredFix {
            tenant: self.tenant,
            device,
            uid: Arc::from(""),
            protocol: Protocol::Json,
            received: fix.fix_time + 1_500,
            fix,
        }
    }

    async fn copy(&self, table: &str, rows: &[StoredFix]) -> Result<(), LoadgenError> {
        let mut conn = self.pool.acquire().await?;
        let mut copy = conn.copy_in_raw(&copy_into(table)).await?;
        copy.send(encode_copy(rows)).await?;
        copy.finish().await?;
        Ok(())
    }

    /// The probe device's month at 10 s, near Berlin; returns the rows loaded.
    async fn load_probe(&self, chunk: usize) -> Result<u64, LoadgenError> {
        let start = self.end_ms - PROBE_DAYS * DAY_MS;
        let count = PROBE_DAYS * DAY_MS / PROBE_INTERVAL_MS;
        let mut rows = Vec::with_capacity(chunk);
        for i in 0..count {
            // A slow loop around the box centre, always inside the probe box.
            let angle = i as f64 / 500.0;
            let mut fix = Fix::new(
                start + i * PROBE_INTERVAL_MS,
                52.5 + 0.05 * angle.sin(),
                13.4 + 0.05 * angle.cos(),
            );
            fix.speed_mps = Some(if (i / 360) % 3 == 0 { 0.0 } else { 12.0 });
            fix.heading_deg = Some((angle.to_degrees()).rem_euclid(360.0));
            rows.push(self.stored(self.probe, fix));
            if rows.len() == chunk {
                self.copy("positions", &rows).await?;
                rows.clear();
            }
        }
        if !rows.is_empty() {
            self.copy("positions", &rows).await?;
        }
        Ok(count as u64)
    }

    /// Every device's latest position (the probe's and the filler's), as the processor keeps it.
    async fn load_latest(&self) -> Result<(), LoadgenError> {
        let rows: Vec<StoredFix> = std::iter::once(self.probe)
            .chain(self.filler.iter().copied())
            .enumerate()
            .map(|(n, device)| {
                let (lat, lon) = filler_place(n);
                self.stored(device, Fix::new(self.end_ms - 1_000, lat, lon))
            })
            .collect();
        self.copy("last_positions", &rows).await
    }

    /// Add filler rows until the table holds `target` rows; returns the rows it holds.
    async fn grow(&self, mut loaded: u64, target: u64, chunk: usize) -> Result<u64, LoadgenError> {
        let start = self.end_ms - YEAR_MS;
        let devices = self.filler.len() as u64;
        // The filler's rows so far (the probe's came first).
        let probe_rows = (PROBE_DAYS * DAY_MS / PROBE_INTERVAL_MS) as u64;
        let mut n = loaded.saturating_sub(probe_rows);
        let mut rows = Vec::with_capacity(chunk);
        while loaded < target {
            let (d, j) = ((n % devices) as usize, n / devices);
            // Device d's j-th fix: spread over the year, a different phase per device.
            let phase = (j as f64 * PHI + d as f64 / devices as f64).fract();
            let fix_time = start + (phase * YEAR_MS as f64) as i64;
            let (lat, lon) = filler_place(d + 1);
            let mut fix = Fix::new(
                fix_time,
                lat + (j % 100) as f64 * 1e-4,
                lon + (j % 97) as f64 * 1e-4,
            );
            fix.speed_mps = Some((j % 30) as f64);
            rows.push(self.stored(self.filler[d], fix));
            n += 1;
            loaded += 1;
            if rows.len() == chunk {
                self.copy_grouped(&mut rows).await?;
                rows.clear();
            }
        }
        if !rows.is_empty() {
            self.copy_grouped(&mut rows).await?;
        }
        Ok(loaded)
    }

    /// COPY a chunk of the filler grouped by day partition, then device and time: the same
    /// rows (what the table holds at each size does not change), but each partition receives
    /// runs instead of one row at a time (a chunk in generation order touches all 374
    /// partitions row after row: 20,000 rows/s here at 10M rows, where grouped it copies at
    /// several times that).
    async fn copy_grouped(&self, rows: &mut [StoredFix]) -> Result<(), LoadgenError> {
        rows.sort_unstable_by_key(|r| {
            (r.fix.fix_time.div_euclid(DAY_MS), r.device, r.fix.fix_time)
        });
        self.copy("positions", rows).await
    }

    /// The five reads, as query-api paths.
    fn reads(&self) -> Vec<(&'static str, String)> {
        let iso = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let probe = self.probe;
        let day = (iso(self.end_ms - 2 * DAY_MS), iso(self.end_ms - DAY_MS));
        let month = (iso(self.end_ms - PROBE_DAYS * DAY_MS), iso(self.end_ms));
        let hour = (
            iso(self.end_ms - DAY_MS - 3_600_000),
            iso(self.end_ms - DAY_MS),
        );
        vec![
            (
                "device day, JSON (8,640 fixes)",
                format!(
                    "/v1/devices/{probe}/positions?from={}&to={}&limit=100000&format=json",
                    day.0, day.1
                ),
            ),
            (
                "device month, bucket=1h (720 rows)",
                format!(
                    "/v1/devices/{probe}/positions?from={}&to={}&bucket=1h&limit=100000",
                    month.0, month.1
                ),
            ),
            ("latest of every device", "/v1/positions/latest".to_owned()),
            (
                "bbox over an hour (360 fixes)",
                format!(
                    "/v1/positions?bbox=13.3,52.4,13.5,52.6&from={}&to={}&limit=10000",
                    hour.0, hour.1
                ),
            ),
            (
                "summary over a month (259,200 fixes)",
                format!(
                    "/v1/devices/{probe}/summary?from={}&to={}",
                    month.0, month.1
                ),
            ),
        ]
    }
}

/// Where the `n`th device of the filler lives: a grid over southern Europe, far from the probe
/// box (13.3–13.5 E, 52.4–52.6 N).
fn filler_place(n: usize) -> (f64, f64) {
    let (row, col) = ((n / 100) as f64, (n % 100) as f64);
    (40.0 + row * 0.05, -5.0 + col * 0.1)
}

/// The query-api binary on the scratch database.
struct QueryApi {
    child: tokio::process::Child,
    base: String,
}

impl QueryApi {
    async fn start(
        config: &HistoryScaleConfig,
        scratch: &DatabaseArgs,
        secret: &SecretString,
    ) -> Result<Self, LoadgenError> {
        let program = config.bin_dir.join("query-api");
        if !program.exists() {
            return Err(LoadgenError::Setup(format!(
                "{} not found: build it first (cargo build --release -p query-api) or pass --bin-dir",
                program.display()
            )));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| LoadgenError::Setup(e.to_string()))?
            .port();
        let child = tokio::process::Command::new(&program)
            .env("DATABASE_URL", scratch.database_url.expose_secret())
            .env("REDIS_URL", config.redis.redis_url.expose_secret())
            .env("JWT_SECRET", secret.expose_secret())
            .env("QUERY_API_ADDR", format!("127.0.0.1:{port}"))
            .env("API_RATE_LIMIT", "1000000")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| LoadgenError::Setup(format!("{}: {e}", program.display())))?;
        let api = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client
                .get(format!("{}/readyz", api.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(api);
            }
            if Instant::now() > deadline {
                return Err(LoadgenError::Setup("query-api did not become ready".into()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One warm-up and `runs` timed reads of `path`, each following `X-Next-Cursor` to the
    /// last page: (p50 ms, p95 ms, answer bytes over every page).
    async fn time(
        &self,
        client: &reqwest::Client,
        token: &str,
        path: &str,
        runs: usize,
    ) -> Result<(f64, f64, usize), String> {
        let mut times = Vec::with_capacity(runs);
        let mut bytes = 0;
        for run in 0..=runs {
            let started = Instant::now();
            bytes = 0;
            let mut cursor: Option<String> = None;
            loop {
                let url = match &cursor {
                    Some(c) => format!("{}{path}&cursor={c}", self.base),
                    None => format!("{}{path}", self.base),
                };
                let response = client
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                cursor = response
                    .headers()
                    .get("x-next-cursor")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = response.bytes().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
                }
                bytes += body.len();
                if cursor.is_none() {
                    break;
                }
            }
            if run > 0 {
                times.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        Ok((at(0.5), at(0.95), bytes))
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
