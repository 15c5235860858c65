//! `loadgen overload`: what ingest's overload policy (`ingest/src/overload.rs`) does when more
//! is offered than the store keeps up with. Several seeded tenants send `POST /v1/fixes`
//! batches open loop (at a scheduled rate, whatever the answers): one *noisy* tenant whose rate
//! climbs in steps from below to well above the store's rate, and a few *quiet* tenants at a
//! small constant rate each. Every second the run records, per tenant class: fixes offered,
//! acknowledged (2xx), shed (`503` with `Retry-After`), failed otherwise, not sent because the
//! tenant's requests in flight were at the client's cap, and (with `honour_retry_after`) held
//! back by a device waiting out its `Retry-After` (counted, not resent; without it every
//! device keeps sending on schedule, the worst case); and from the services' own metrics:
//! fixes stored (the processor's accepted counter), the store lag in records with the shedding
//! bound and the tenant limit (ingest), the age of the oldest unstored record and the freshness
//! of the newest stored fix (processor: the ingest-to-database latency right now). After the
//! load it keeps sampling until the backlog is drained (or the tail ends). Outputs: a CSV of the
//! seconds, an SVG chart, and a summary (per tenant totals and acknowledgement latency, peak
//! lag, ingest-to-database latency over the load).
//!
//! It drives running services (ingest and processor of one throwaway database and topic; see
//! `docs/performance.md` for the command that starts them): the same run against an ingest
//! with shedding on and with a bound no backlog reaches shows the policy's effect.

use crate::seed;
use crate::sim::Traffic;
use crate::stats::{Latency, Percentiles};
use crate::wire;
use crate::LoadgenError;
use gps_domain::fix::now_millis;
use gps_runtime::ops::metric_sample;
use serde::Serialize;
use sqlx::PgPool;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Device clocks start this far back, so that a whole run's simulated time stays in the past.
const CLOCK_HEADROOM_MS: i64 = 2 * 3600 * 1000;
/// How often the senders top up their credit of requests.
const SEND_TICK: Duration = Duration::from_millis(10);
/// Seconds of a drained backlog (lag 0) that end the tail early.
const DRAINED_SECS: usize = 3;
/// Longest wait for a service's `/metrics`.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// What to offer and where.
#[derive(Debug, Clone)]
pub struct OverloadConfig {
    /// Ingest HTTP base URL (its `/metrics` too).
    pub ingest_url: String,
    /// The processor's ops base URL (its `/metrics`).
    pub processor_url: String,
    /// Offered fixes per second of all tenants together, one step after the other; the quiet
    /// tenants' share is constant, the noisy tenant gets the rest.
    pub steps: Vec<f64>,
    /// How long each step lasts.
    pub step_duration: Duration,
    /// Longest sampling after the load stopped (ends early once the backlog is drained).
    pub tail: Duration,
    /// Devices of the noisy tenant.
    pub noisy_devices: usize,
    /// Fixes per request of the noisy tenant.
    pub noisy_batch: usize,
    /// Quiet tenants.
    pub quiet_tenants: usize,
    /// Devices of each quiet tenant.
    pub quiet_devices: usize,
    /// Fixes per second of each quiet tenant.
    pub quiet_rate: f64,
    /// Fixes per request of the quiet tenants.
    pub quiet_batch: usize,
    /// Requests in flight per tenant at most; what would exceed it counts as not sent.
    pub max_in_flight: usize,
    /// A device answered `503` with `Retry-After` holds its fixes back that long (counted as
    /// held back, not resent); otherwise it keeps sending on schedule (the worst case).
    pub honour_retry_after: bool,
}

impl OverloadConfig {
    /// How long the load lasts (all steps).
    pub fn load_duration(&self) -> Duration {
        self.step_duration * self.steps.len() as u32
    }

    /// All tenants' scheduled fixes per second `elapsed` into the load (0 after it).
    pub fn target_at(&self, elapsed: Duration) -> f64 {
        let step = (elapsed.as_secs_f64() / self.step_duration.as_secs_f64().max(1e-3)) as usize;
        self.steps.get(step).copied().unwrap_or(0.0)
    }

    /// The quiet tenants' fixes per second, together.
    fn quiet_total(&self) -> f64 {
        self.quiet_rate * self.quiet_tenants as f64
    }

    /// One tenant's scheduled fixes per second `elapsed` into the load.
    fn rate_at(&self, quiet: bool, elapsed: Duration) -> f64 {
        let target = self.target_at(elapsed);
        match (quiet, target > 0.0) {
            (_, false) => 0.0,
            (true, true) => self.quiet_rate,
            (false, true) => (target - self.quiet_total()).max(0.0),
        }
    }

    /// Simulated ms between two fixes of a device that keeps the busiest device's clock (the
    /// noisy tenant's, over the whole load) within [`CLOCK_HEADROOM_MS`], at most 1 s.
    fn fix_step_ms(&self) -> i64 {
        let secs = self.step_duration.as_secs_f64();
        let noisy_fixes: f64 = self
            .steps
            .iter()
            .map(|&s| (s - self.quiet_total()).max(0.0) * secs)
            .sum();
        let per_device = (noisy_fixes / self.noisy_devices.max(1) as f64)
            .max(
                self.quiet_rate * secs * self.steps.len() as f64 / self.quiet_devices.max(1) as f64,
            )
            .max(1.0);
        ((CLOCK_HEADROOM_MS as f64 * 0.9 / per_device) as i64).clamp(1, 1000)
    }
}

/// Fixes by what became of them: a tenant's totals, or per second over some tenants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FixCounts {
    /// Fixes offered (the schedule's).
    pub offered: u64,
    /// Fixes of requests answered 2xx.
    pub acked: u64,
    /// Fixes of requests answered `503` with `Retry-After`.
    pub shed: u64,
    /// Fixes of requests that failed otherwise.
    pub failed: u64,
    /// Fixes not sent: the tenant's requests in flight were at the client's cap.
    pub unsent: u64,
    /// Fixes held back by devices waiting out a `Retry-After`.
    pub held_back: u64,
}

impl FixCounts {
    fn fields(&self) -> [u64; 6] {
        [
            self.offered,
            self.acked,
            self.shed,
            self.failed,
            self.unsent,
            self.held_back,
        ]
    }

    fn from_fields([offered, acked, shed, failed, unsent, held_back]: [u64; 6]) -> Self {
        Self {
            offered,
            acked,
            shed,
            failed,
            unsent,
            held_back,
        }
    }

    /// Per second of `interval`: the growth from `before` to these totals.
    fn per_second_since(&self, before: &Self, interval: Duration) -> Self {
        let (now, before) = (self.fields(), before.fields());
        Self::from_fields(std::array::from_fn(|i| {
            per_second(Some(now[i] as f64), Some(before[i] as f64), interval)
        }))
    }

    fn add(&mut self, other: &Self) {
        let (mine, other) = (self.fields(), other.fields());
        *self = Self::from_fields(std::array::from_fn(|i| mine[i] + other[i]));
    }

    /// Percent of the offered fixes.
    fn percent(&self, part: u64) -> f64 {
        if self.offered == 0 {
            0.0
        } else {
            part as f64 * 100.0 / self.offered as f64
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SecondSample {
    /// Seconds since the load started.
    pub t: u64,
    /// Scheduled fixes per second, all tenants (0 after the load).
    pub target: f64,
    /// All tenants' fixes this second.
    #[serde(flatten)]
    pub fixes: FixCounts,
    /// The quiet tenants' fixes this second, together.
    pub quiet: FixCounts,
    /// Fixes the processor stored this second (its accepted counter).
    pub stored: u64,
    /// Fixes ingest's guard refused as overloaded this second (ingest's counter).
    pub guard_refused: u64,
    /// The store lag ingest polls, records.
    pub lag_records: Option<f64>,
    /// The lag over which ingest sheds, records.
    pub bound_records: Option<f64>,
    /// Fixes per second each tenant may send while shedding (0 = not shedding).
    pub tenant_limit: Option<f64>,
    /// Seconds since the oldest record not yet stored was produced (processor).
    pub oldest_unstored_s: Option<f64>,
    /// Seconds between now and the receive time of the newest stored fix (processor).
    pub freshness_s: Option<f64>,
    /// p99 acknowledgement latency of this second's 2xx answers, all tenants, ms.
    pub ack_p99_ms: Option<f64>,
    /// The same for the quiet tenants.
    pub quiet_ack_p99_ms: Option<f64>,
}

/// One tenant's totals over the load.
#[derive(Debug, Clone, Serialize)]
pub struct TenantSummary {
    /// The tenant's name.
    pub name: String,
    /// A quiet tenant (constant small rate), else the noisy one.
    pub quiet: bool,
    /// Devices.
    pub devices: usize,
    /// Fixes per request.
    pub batch: usize,
    /// What became of the tenant's fixes.
    #[serde(flatten)]
    pub fixes: FixCounts,
    /// Acknowledgement latency of 2xx answers.
    pub ack: Percentiles,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct OverloadReport {
    /// Seconds the load lasted.
    pub load_secs: f64,
    /// Tenants, the noisy one first.
    pub tenants: Vec<TenantSummary>,
    /// Fixes stored while the load lasted, per second.
    pub stored_rate_under_load: f64,
    /// Largest store lag seen, records.
    pub peak_lag_records: f64,
    /// The shedding bound ingest reported, records.
    pub bound_records: Option<f64>,
    /// Ingest-to-database latency (the processor's freshness, sampled each second) over the
    /// load: p50 / p99 / max of the samples, seconds.
    pub freshness_p50_s: f64,
    /// See `freshness_p50_s`.
    pub freshness_p99_s: f64,
    /// See `freshness_p50_s`.
    pub freshness_max_s: f64,
    /// Seconds after the load until the lag was 0, when it got there.
    pub drained_after_secs: Option<u64>,
    /// `/proc/loadavg` before and after.
    pub load_average: (String, String),
    /// Every second.
    pub seconds: Vec<SecondSample>,
}

/// Counters of one tenant, shared by its request tasks and read by the sampler.
#[derive(Default)]
struct Counters {
    offered: AtomicU64,
    acked: AtomicU64,
    shed: AtomicU64,
    failed: AtomicU64,
    unsent: AtomicU64,
    held_back: AtomicU64,
    /// This second's acknowledgement latency (taken by the sampler).
    second: Mutex<Latency>,
}

impl Counters {
    fn totals(&self) -> FixCounts {
        FixCounts::from_fields(
            [
                &self.offered,
                &self.acked,
                &self.shed,
                &self.failed,
                &self.unsent,
                &self.held_back,
            ]
            .map(|c| c.load(Ordering::Relaxed)),
        )
    }
}

struct Tenant {
    name: String,
    quiet: bool,
    batch: usize,
    devices: usize,
    counters: Arc<Counters>,
    /// Acknowledgement latency over the load.
    latency: Latency,
}

/// Seed the tenants, offer the load, sample every second, and drain.
pub async fn run(pool: &PgPool, config: &OverloadConfig) -> Result<OverloadReport, LoadgenError> {
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(config.max_in_flight * (1 + config.quiet_tenants))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| LoadgenError::Setup(format!("http client: {e}")))?;
    let url = format!("{}/v1/fixes", config.ingest_url.trim_end_matches('/'));
    let step_ms = config.fix_step_ms();
    let load = config.load_duration();
    let start = Instant::now() + Duration::from_millis(200);
    let mut tenants = Vec::new();
    let mut senders = Vec::new();
    for index in 0..=config.quiet_tenants {
        let quiet = index > 0;
        let (name, devices, batch) = if quiet {
            let name = format!("overload-{run_id}-quiet-{index}");
            (name, config.quiet_devices, config.quiet_batch)
        } else {
            let name = format!("overload-{run_id}-noisy");
            (name, config.noisy_devices, config.noisy_batch)
        };
        let (devices, batch) = (devices.max(1), batch.max(1));
        let fleet = seed::fleet(pool, &name, &format!("ov{index}{run_id}"), devices).await?;
        let counters = Arc::new(Counters::default());
        let sender = Sender {
            config: config.clone(),
            quiet,
            batch,
            tokens: fleet.devices.into_iter().map(|d| d.token).collect(),
            traffic: Traffic::clean_fleet(devices, now_millis() - CLOCK_HEADROOM_MS, step_ms),
            client: client.clone(),
            url: url.clone(),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            counters: counters.clone(),
            paused_until: Arc::new((0..devices).map(|_| AtomicU64::new(0)).collect()),
            start,
        };
        senders.push(tokio::spawn(sender.run(start, start + load)));
        tenants.push(Tenant {
            name,
            quiet,
            batch,
            devices,
            counters,
            latency: Latency::default(),
        });
    }
    let load_before = load_average();
    let seconds = sample(config, &client, &mut tenants, start).await;
    for sender in senders {
        let _ = sender.await;
    }
    Ok(summarize(
        config,
        &tenants,
        seconds,
        (load_before, load_average()),
    ))
}

/// One tenant's open-loop sender.
struct Sender {
    config: OverloadConfig,
    quiet: bool,
    batch: usize,
    tokens: Vec<String>,
    traffic: Vec<Traffic>,
    client: reqwest::Client,
    url: String,
    in_flight: Arc<Semaphore>,
    counters: Arc<Counters>,
    /// Per device: ms after the load's start until which it waits out a `Retry-After`.
    paused_until: Arc<Vec<AtomicU64>>,
    start: Instant,
}

impl Sender {
    async fn run(mut self, start: Instant, end: Instant) {
        tokio::time::sleep_until(start.into()).await;
        let mut tick = tokio::time::interval(SEND_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut credit, mut last, mut device) = (0.0f64, start, 0usize);
        loop {
            tick.tick().await;
            let now = Instant::now();
            if now >= end {
                break;
            }
            let rate = self.config.rate_at(self.quiet, now - start);
            let requests_per_sec = rate / self.batch as f64;
            // At most a second's worth: a generator starved of CPU offers less, not a burst.
            credit = (credit + requests_per_sec * (now - last).as_secs_f64())
                .min(requests_per_sec.max(1.0));
            last = now;
            while credit >= 1.0 {
                credit -= 1.0;
                self.offer(device);
                device = (device + 1) % self.tokens.len();
            }
        }
    }

    fn offer(&mut self, device: usize) {
        let n = self.batch as u64;
        self.counters.offered.fetch_add(n, Ordering::Relaxed);
        let since_start = |at: Instant| at.saturating_duration_since(self.start).as_millis() as u64;
        if self.paused_until[device].load(Ordering::Relaxed) > since_start(Instant::now()) {
            self.counters.held_back.fetch_add(n, Ordering::Relaxed);
            return;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.counters.unsent.fetch_add(n, Ordering::Relaxed);
            return;
        };
        let fixes: Vec<_> = (0..self.batch)
            .map(|_| self.traffic[device].next_fix().0)
            .collect();
        let request = self
            .client
            .post(&self.url)
            .bearer_auth(&self.tokens[device])
            .header("content-type", "application/json")
            .body(wire::json_body(&fixes));
        let counters = self.counters.clone();
        let pause = self
            .config
            .honour_retry_after
            .then(|| (self.paused_until.clone(), self.start));
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = request.send().await;
            let counter = match outcome {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    if let (Some((paused_until, start)), Some(secs)) = (&pause, retry_after) {
                        let until = Instant::now() + Duration::from_secs(secs);
                        let until = until.saturating_duration_since(*start).as_millis() as u64;
                        paused_until[device].fetch_max(until, Ordering::Relaxed);
                    }
                    // Read the body so that the connection goes back to the pool.
                    let _ = response.bytes().await;
                    if status.is_success() {
                        counters
                            .second
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .record_ms(started.elapsed().as_secs_f64() * 1e3);
                        &counters.acked
                    } else if status.as_u16() == 503 && retry_after.is_some() {
                        &counters.shed
                    } else {
                        &counters.failed
                    }
                }
                Err(_) => &counters.failed,
            };
            counter.fetch_add(n, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// The services' metrics read this second.
#[derive(Debug, Default, Clone, Copy)]
struct Scrape {
    stored_total: Option<f64>,
    guard_refused_total: Option<f64>,
    lag: Option<f64>,
    bound: Option<f64>,
    limit: Option<f64>,
    oldest_unstored: Option<f64>,
    freshness: Option<f64>,
}

async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    let url = format!("{}/metrics", base.trim_end_matches('/'));
    let request = client.get(&url).timeout(SCRAPE_TIMEOUT).send();
    match request.await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn scrape(client: &reqwest::Client, config: &OverloadConfig) -> Scrape {
    let (ingest, processor) = tokio::join!(
        metrics_text(client, &config.ingest_url),
        metrics_text(client, &config.processor_url)
    );
    let bound = metric_sample(&ingest, "gps_ingest_shed_bound_records");
    Scrape {
        stored_total: metric_sample(&processor, "gps_processor_fixes_accepted_total"),
        guard_refused_total: metric_sample(
            &ingest,
            "gps_ingest_fixes_refused_total{protocol=\"json\",reason=\"overloaded\"}",
        )
        .or(Some(0.0)),
        // With shedding off ingest does not poll the lag: the processor's watchdog does.
        lag: match bound {
            Some(b) if b > 0.0 => metric_sample(&ingest, "gps_ingest_store_lag_records"),
            _ => metric_sample(&processor, "gps_processor_group_lag"),
        },
        bound,
        limit: metric_sample(&ingest, "gps_ingest_shed_tenant_limit_fixes_per_second"),
        oldest_unstored: metric_sample(&processor, "gps_processor_oldest_unstored_age_seconds"),
        freshness: metric_sample(&processor, "gps_processor_freshness_seconds"),
    }
}

/// Scrape both services every second on a task of its own (an overloaded ingest can take
/// seconds to answer, which must not stretch the sampler's seconds), publishing the latest.
async fn scraper(
    client: reqwest::Client,
    config: OverloadConfig,
    latest: tokio::sync::watch::Sender<Option<(Instant, Scrape)>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !latest.is_closed() {
        tick.tick().await;
        let scraped = scrape(&client, &config).await;
        let _ = latest.send(Some((Instant::now(), scraped)));
    }
}

/// Per second of `interval`: the growth of a counter from `before` to `now`.
fn per_second(now: Option<f64>, before: Option<f64>, interval: Duration) -> u64 {
    match (now, before) {
        (Some(now), Some(before)) => {
            ((now - before).max(0.0) / interval.as_secs_f64().max(1e-3)).round() as u64
        }
        _ => 0,
    }
}

/// Sample every second from `start` until the load ended and the backlog drained (or the tail
/// ended); the tenants' latency over the load accumulates in `tenants`. Counts are rates over
/// the sample's actual interval (a starved sampler wakes late), and the services' counters are
/// rates between their two latest scrapes.
async fn sample(
    config: &OverloadConfig,
    client: &reqwest::Client,
    tenants: &mut [Tenant],
    start: Instant,
) -> Vec<SecondSample> {
    let load = config.load_duration();
    let (publish, latest) = tokio::sync::watch::channel(None);
    let scraping = tokio::spawn(scraper(client.clone(), config.clone(), publish));
    let mut seconds = Vec::new();
    let mut previous: Vec<FixCounts> = tenants.iter().map(|t| t.counters.totals()).collect();
    let mut previous_at = Instant::now();
    let mut used_scrape: Option<(Instant, Scrape)> = None;
    let (mut stored, mut guard_refused) = (0, 0);
    let mut drained = 0usize;
    for t in 1u64.. {
        let at = start + Duration::from_secs(t);
        if at > start + load + config.tail {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let totals: Vec<FixCounts> = tenants.iter().map(|t| t.counters.totals()).collect();
        let now = Instant::now();
        let interval = now - previous_at;
        previous_at = now;
        let current = *latest.borrow();
        let scraped = current.map(|(_, s)| s).unwrap_or_default();
        if let Some((scraped_at, scrape)) = current {
            match used_scrape {
                Some((used_at, used)) if used_at != scraped_at => {
                    let between = scraped_at - used_at;
                    stored = per_second(scrape.stored_total, used.stored_total, between);
                    guard_refused = per_second(
                        scrape.guard_refused_total,
                        used.guard_refused_total,
                        between,
                    );
                }
                _ => {}
            }
            used_scrape = Some((scraped_at, scrape));
        }
        let mut sample = SecondSample {
            t,
            target: config.target_at(Duration::from_secs(t - 1)),
            stored,
            guard_refused,
            lag_records: scraped.lag,
            bound_records: scraped.bound,
            tenant_limit: scraped.limit,
            oldest_unstored_s: scraped.oldest_unstored,
            freshness_s: scraped.freshness,
            ..SecondSample::default()
        };
        let (mut all, mut quiet) = (Latency::default(), Latency::default());
        for ((tenant, before), totals) in tenants.iter_mut().zip(previous.iter_mut()).zip(totals) {
            let fixes = totals.per_second_since(before, interval);
            *before = totals;
            sample.fixes.add(&fixes);
            let second = std::mem::take(
                &mut *tenant
                    .counters
                    .second
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if Duration::from_secs(t) <= load {
                tenant.latency.merge(&second);
            }
            all.merge(&second);
            if tenant.quiet {
                sample.quiet.add(&fixes);
                quiet.merge(&second);
            }
        }
        let p99 = |l: &Latency| (l.count() > 0).then(|| l.quantile_ms(0.99));
        sample.ack_p99_ms = p99(&all);
        sample.quiet_ack_p99_ms = p99(&quiet);
        let after_load = Duration::from_secs(t) > load;
        drained = if after_load && sample.lag_records == Some(0.0) {
            drained + 1
        } else {
            0
        };
        tracing::info!(
            t,
            offered = sample.fixes.offered,
            acked = sample.fixes.acked,
            shed = sample.fixes.shed,
            stored = sample.stored,
            lag = sample.lag_records,
            limit = sample.tenant_limit,
            "overload second"
        );
        seconds.push(sample);
        if drained >= DRAINED_SECS {
            break;
        }
    }
    scraping.abort();
    seconds
}

fn summarize(
    config: &OverloadConfig,
    tenants: &[Tenant],
    seconds: Vec<SecondSample>,
    load_average: (String, String),
) -> OverloadReport {
    let load_secs = config.load_duration().as_secs();
    let under_load = || seconds.iter().filter(|s| s.t <= load_secs);
    let stored: u64 = under_load().map(|s| s.stored).sum();
    let mut freshness: Vec<f64> = under_load().filter_map(|s| s.freshness_s).collect();
    freshness.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        freshness
            .get(((freshness.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    let drained_after_secs = seconds
        .iter()
        .find(|s| s.t > load_secs && s.lag_records == Some(0.0))
        .map(|s| s.t - load_secs);
    OverloadReport {
        load_secs: load_secs as f64,
        tenants: tenants
            .iter()
            .map(|t| TenantSummary {
                name: t.name.clone(),
                quiet: t.quiet,
                devices: t.devices,
                batch: t.batch,
                fixes: t.counters.totals(),
                ack: t.latency.percentiles(),
            })
            .collect(),
        stored_rate_under_load: stored as f64 / load_secs.max(1) as f64,
        peak_lag_records: seconds
            .iter()
            .filter_map(|s| s.lag_records)
            .fold(0.0, f64::max),
        bound_records: seconds.iter().find_map(|s| s.bound_records),
        freshness_p50_s: quantile(0.5),
        freshness_p99_s: quantile(0.99),
        freshness_max_s: freshness.last().copied().unwrap_or(0.0),
        drained_after_secs,
        load_average,
        seconds,
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The summary printed at the end.
pub fn table(report: &OverloadReport) -> String {
    let mut out = String::new();
    let bound = report
        .bound_records
        .map(|b| format!("{b:.0} records"))
        .unwrap_or_else(|| "unknown".into());
    let _ = writeln!(
        out,
        "load {:.0} s, shedding bound {bound}, load average {} -> {}",
        report.load_secs, report.load_average.0, report.load_average.1
    );
    let _ = writeln!(
        out,
        "| tenant | devices x batch | offered | acknowledged | shed (503) | failed | not sent | held back | ack p50 / p99 ms |\n|---|---|---|---|---|---|---|---|---|"
    );
    for t in &report.tenants {
        let f = &t.fixes;
        let _ = writeln!(
            out,
            "| {} ({}) | {} x {} | {} | {} ({:.1} %) | {} ({:.1} %) | {} | {} | {} | {:.1} / {:.1} |",
            t.name,
            if t.quiet { "quiet" } else { "noisy" },
            t.devices,
            t.batch,
            f.offered,
            f.acked,
            f.percent(f.acked),
            f.shed,
            f.percent(f.shed),
            f.failed,
            f.unsent,
            f.held_back,
            t.ack.p50,
            t.ack.p99
        );
    }
    let drained = report
        .drained_after_secs
        .map(|s| format!("{s} s after the load"))
        .unwrap_or_else(|| "not within the tail".into());
    let _ = writeln!(
        out,
        "stored under load {:.0} fixes/s; peak lag {:.0} records; ingest->database (freshness) p50 {:.1} / p99 {:.1} / max {:.1} s; drained {drained}",
        report.stored_rate_under_load,
        report.peak_lag_records,
        report.freshness_p50_s,
        report.freshness_p99_s,
        report.freshness_max_s
    );
    out
}

/// Write the seconds as CSV (one row per second, the columns of [`SecondSample`]).
pub fn write_csv(seconds: &[SecondSample], path: &Path) -> Result<(), LoadgenError> {
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
    let mut out = String::from(
        "t,target,offered,acked,shed,failed,unsent,held_back,stored,quiet_offered,quiet_acked,quiet_shed,\
         guard_refused,lag_records,bound_records,tenant_limit,oldest_unstored_s,freshness_s,\
         ack_p99_ms,quiet_ack_p99_ms\n",
    );
    for s in seconds {
        let _ = writeln!(
            out,
            "{},{:.0},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            s.t,
            s.target,
            s.fixes.fields().map(|n| n.to_string()).join(","),
            s.stored,
            s.quiet.offered,
            s.quiet.acked,
            s.quiet.shed,
            s.guard_refused,
            opt(s.lag_records),
            opt(s.bound_records),
            opt(s.tenant_limit),
            opt(s.oldest_unstored_s),
            opt(s.freshness_s),
            opt(s.ack_p99_ms),
            opt(s.quiet_ack_p99_ms)
        );
    }
    std::fs::write(path, out).map_err(|e| LoadgenError::Output {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// A line of a chart panel: its legend, colour and points.
type Line = (&'static str, plotters::style::RGBColor, Vec<(f64, f64)>);

/// Write the chart: all tenants' fixes per second (offered, acknowledged, shed, stored), the
/// quiet tenants' (offered, acknowledged, shed), the store lag with the bound, and the
/// latencies (ingest to database, p99 acknowledgement), per second.
pub fn write_svg(seconds: &[SecondSample], title: &str, path: &Path) -> Result<(), LoadgenError> {
    use plotters::prelude::*;
    let err = |e: String| LoadgenError::Output {
        path: path.display().to_string(),
        reason: e,
    };
    let series = |f: &dyn Fn(&SecondSample) -> Option<f64>| -> Vec<(f64, f64)> {
        seconds
            .iter()
            .filter_map(|s| f(s).map(|v| (s.t as f64, v)))
            .collect()
    };
    let count = |f: fn(&SecondSample) -> u64| series(&|s| Some(f(s) as f64));
    let orange = RGBColor(230, 120, 0);
    let grey = RGBColor(120, 120, 120);
    let panels: [(&str, Vec<Line>); 4] = [
        (
            "all tenants, fixes per second",
            vec![
                ("offered", BLUE, count(|s| s.fixes.offered)),
                ("acknowledged", GREEN, count(|s| s.fixes.acked)),
                ("shed (503)", RED, count(|s| s.fixes.shed)),
                ("stored", BLACK, count(|s| s.stored)),
                (
                    "not sent (client's in-flight cap)",
                    grey,
                    count(|s| s.fixes.unsent),
                ),
                (
                    "held back (Retry-After)",
                    orange,
                    count(|s| s.fixes.held_back),
                ),
            ],
        ),
        (
            "quiet tenants together, fixes per second",
            vec![
                ("offered", BLUE, count(|s| s.quiet.offered)),
                ("acknowledged", GREEN, count(|s| s.quiet.acked)),
                ("shed (503)", RED, count(|s| s.quiet.shed)),
            ],
        ),
        (
            "store lag, records",
            vec![
                ("lag", MAGENTA, series(&|s| s.lag_records)),
                (
                    "shedding bound",
                    grey,
                    // A bound the run cannot reach (shedding off) would flatten the lag.
                    series(&|s| s.bound_records.filter(|b| *b < 1e9)),
                ),
            ],
        ),
        (
            "latency, seconds",
            vec![
                (
                    "ingest -> database (freshness)",
                    orange,
                    series(&|s| s.freshness_s),
                ),
                (
                    "acknowledgement p99",
                    CYAN,
                    series(&|s| s.ack_p99_ms.map(|ms| ms / 1e3)),
                ),
            ],
        ),
    ];
    let root = SVGBackend::new(path, (1000, 1100)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| err(e.to_string()))?;
    let t_max = seconds.last().map(|s| s.t + 1).unwrap_or(1) as f64;
    for (area, (caption, lines)) in root.split_evenly((4, 1)).iter().zip(panels) {
        let y_max = lines
            .iter()
            .flat_map(|(_, _, points)| points.iter().map(|p| p.1))
            .fold(1.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(70)
            .caption(caption, ("sans-serif", 15))
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (label, color, points) in lines {
            chart
                .draw_series(LineSeries::new(points, &color))
                .map_err(|e| err(e.to_string()))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OverloadConfig {
        OverloadConfig {
            ingest_url: "http://127.0.0.1:1".into(),
            processor_url: "http://127.0.0.1:1".into(),
            steps: vec![20_000.0, 200_000.0],
            step_duration: Duration::from_secs(10),
            tail: Duration::from_secs(5),
            noisy_devices: 1_000,
            noisy_batch: 100,
            quiet_tenants: 3,
            quiet_devices: 100,
            quiet_rate: 2_000.0,
            quiet_batch: 10,
            max_in_flight: 64,
            honour_retry_after: true,
        }
    }

    #[test]
    fn quiet_tenants_keep_their_rate_and_the_noisy_one_gets_the_rest_of_each_step() {
        let c = config();
        assert_eq!(c.rate_at(true, Duration::from_secs(3)), 2_000.0);
        assert_eq!(c.rate_at(false, Duration::from_secs(3)), 14_000.0);
        assert_eq!(c.rate_at(false, Duration::from_secs(12)), 194_000.0);
        assert_eq!(c.rate_at(true, Duration::from_secs(12)), 2_000.0);
        // After the last step nobody sends.
        assert_eq!(c.rate_at(true, Duration::from_secs(20)), 0.0);
        assert_eq!(c.rate_at(false, Duration::from_secs(25)), 0.0);
        assert_eq!(c.load_duration(), Duration::from_secs(20));
    }

    #[test]
    fn device_clocks_stay_in_the_past_over_the_whole_load() {
        let c = config();
        // The noisy tenant: (14,000 + 194,000) x 10 s over 1,000 devices = 2,080 fixes each.
        let step = c.fix_step_ms();
        assert!(step * 2_080 <= CLOCK_HEADROOM_MS, "step {step} ms");
        assert!(step >= 1_000 / 2, "not needlessly fine: {step} ms");
    }

    fn seconds() -> Vec<SecondSample> {
        (1..=6)
            .map(|t| SecondSample {
                t,
                target: 1_000.0,
                fixes: FixCounts {
                    offered: 1_000,
                    acked: 800,
                    shed: 200,
                    ..FixCounts::default()
                },
                quiet: FixCounts {
                    offered: 100,
                    acked: 100,
                    ..FixCounts::default()
                },
                stored: 700,
                lag_records: Some(if t > 4 { 0.0 } else { 10.0 * t as f64 }),
                bound_records: Some(20.0),
                freshness_s: Some(t as f64),
                ack_p99_ms: (t % 2 == 0).then_some(12.5),
                ..SecondSample::default()
            })
            .collect()
    }

    #[test]
    fn the_summary_counts_the_load_and_when_the_backlog_drained() {
        let mut c = config();
        c.steps = vec![1_000.0];
        c.step_duration = Duration::from_secs(4);
        let report = summarize(&c, &[], seconds(), ("1".into(), "2".into()));
        assert_eq!(report.stored_rate_under_load, 700.0);
        assert_eq!(report.peak_lag_records, 40.0);
        assert_eq!(report.drained_after_secs, Some(1));
        // Freshness over the load only (seconds 1 to 4).
        assert_eq!(report.freshness_max_s, 4.0);
        assert_eq!(report.freshness_p50_s, 2.0);
    }

    #[test]
    fn csv_and_chart_are_written() {
        let dir = std::env::temp_dir();
        let id = uuid::Uuid::new_v4();
        let (csv, svg) = (
            dir.join(format!("overload-{id}.csv")),
            dir.join(format!("overload-{id}.svg")),
        );
        write_csv(&seconds(), &csv).unwrap();
        write_svg(&seconds(), "test", &svg).unwrap();
        let text = std::fs::read_to_string(&csv).unwrap();
        let chart = std::fs::read_to_string(&svg).unwrap();
        std::fs::remove_file(&csv).unwrap();
        std::fs::remove_file(&svg).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "a header and six seconds");
        let columns = lines[0].split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == columns));
        assert!(lines[2].starts_with("2,1000,1000,800,200,"), "{}", lines[2]);
        assert!(
            lines[1].ends_with(",,"),
            "no ack latency in second 1: {}",
            lines[1]
        );
        assert!(chart.starts_with("<svg") && chart.contains("shedding bound"));
    }
}
