//! Overload shedding: when the store falls behind, ingest refuses new fixes (`503` with
//! `Retry-After` over HTTP, a counted drop over UDP) before the backlog turns into minutes of
//! latency, and it does so per tenant, fairly: only tenants sending more than their fair share
//! of what the store drains are shed, a quiet tenant keeps getting through.
//!
//! **How far behind, how fast it drains.** [`LagMonitor`] polls Kafka every `--shed-poll-ms`
//! for the processor group's position on the fixes topic: per partition the high watermark and
//! the group's committed offset (the low watermark where the group never committed). The lag
//! is their difference summed, in records (one per device per request) the store has not
//! written yet; the *drain rate* is how fast the committed offsets advance, converted to fixes
//! by the fixes per record this instance admitted, and smoothed over a few polls (committed
//! offsets move once per processor batch, so a single poll reads 0 or two batches). It costs one
//! offset fetch and one watermark query per partition, off the request path.
//!
//! **Who is shed.** While the lag is at or below `--shed-lag-records` and nothing is shed, a
//! request costs one atomic load (plus a short lock for its tenant's offered count once the lag
//! passes a quarter of the bound, so that the tenants' rates are known when shedding starts).
//! Above the bound, the *budget* of admitted fixes per second is the drain rate times a factor
//! that aims the lag at half the bound (`1.5 − lag/bound`, within 0.5–1.25: below the drain rate
//! while the lag is over half the bound, above it, probing for more, while it is under). The
//! budget is shared out max-min fairly over the tenants' offered rates (water-filling): the
//! *tenant limit* is the level at which the tenants' rates, each capped at the level, add up to
//! the budget, never below `--shed-tenant-floor-per-sec`. A tenant offering less than the level
//! (its fair share) is never shed; heavier ones get a token bucket at the level. There is no
//! halving and no "is the lag growing" test, so repeated or noisy lag readings cannot collapse
//! the limit. Shedding ends once the lag is under half the bound and the budget covers
//! everything offered. A request may take its bucket into debt (a batch larger than the burst
//! still passes once); the debt sets `Retry-After`.
//!
//! **Cheap refusals.** A tenant whose bucket is in debt is refused by [`Overload::check`]
//! before its request body is read or decoded (HTTP knows the tenant from the credential);
//! the full decision, [`Overload::admit`], charges the fixes once decoded. A shed request is
//! counted in `gps_ingest_shed_total` and not logged one by one: one summary line at most
//! every [`SUMMARY_EVERY`] while shedding.
//!
//! The buckets and rates are per ingest instance, in memory; tenants are the authenticated
//! ones, so the maps are bounded by the tenants that exist and forget idle tenants.

use gps_runtime::config::KafkaArgs;
use gps_runtime::ops::register;
use gps_runtime::service::CancellationToken;
use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Tenants that get a label of their own on the shed counter; the rest count as `other`.
const LABELLED_TENANTS: usize = 20;
/// Longest `Retry-After` a shed request is given, seconds.
const MAX_RETRY_AFTER_SECS: u32 = 30;
/// Weight of the newest poll in the smoothed rates (offered per tenant, drain, fixes per
/// record): about three polls of memory, enough to even out the processor's batch steps.
const RATE_SMOOTHING: f64 = 0.3;
/// The budget's factor is `HEADROOM_AT_ZERO_LAG − lag/bound`, within these bounds: 1 (the
/// drain rate) at half the bound, the lag the policy aims at.
const HEADROOM_AT_ZERO_LAG: f64 = 1.5;
const HEADROOM_MIN: f64 = 0.5;
const HEADROOM_MAX: f64 = 1.25;
/// Committed offsets that have not moved for this long mean a stalled store (the drain rate
/// decays towards 0); shorter gaps are the processor's batches and are ignored (held).
const STALL_AFTER: Duration = Duration::from_secs(5);
/// A tenant whose smoothed offered rate falls below this (fixes/s) is forgotten.
const IDLE_RATE: f64 = 0.1;
/// At most one summary log line of the sheds this often.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Overload settings (flags and env vars).
#[derive(Debug, Clone, clap::Args)]
pub struct OverloadArgs {
    /// Shed load while the processor group's lag on the fixes topic exceeds this many records
    /// (one record per device per request); 0 turns shedding (and the lag poll) off.
    #[arg(
        long = "shed-lag-records",
        env = "INGEST_SHED_LAG_RECORDS",
        default_value_t = 100_000
    )]
    pub lag_records: u64,
    /// The consumer group whose lag is the store's backlog. Default: `PROCESSOR_GROUP_ID` when
    /// set (a deployment that sets it for the processor sets it for ingest alike), else
    /// `gps-processor`, the processor's default.
    #[arg(long = "shed-group", env = "INGEST_SHED_GROUP")]
    pub group: Option<String>,
    /// How often the lag is polled, ms.
    #[arg(long = "shed-poll-ms", env = "INGEST_SHED_POLL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub poll_ms: u64,
    /// Fixes per second every tenant keeps while shedding: the limit never shrinks below it.
    #[arg(
        long = "shed-tenant-floor-per-sec",
        env = "INGEST_SHED_TENANT_FLOOR_PER_SEC",
        default_value_t = 10.0
    )]
    pub tenant_floor_per_sec: f64,
}

impl OverloadArgs {
    /// The processor's consumer group (see [`OverloadArgs::group`]).
    pub fn group(&self) -> String {
        self.group
            .clone()
            .or_else(|| std::env::var("PROCESSOR_GROUP_ID").ok())
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| "gps-processor".to_owned())
    }

    /// The poll interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }
}

/// A shed request: the tenant should retry after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    /// Seconds for `Retry-After`.
    pub retry_after_secs: u32,
    /// Fixes refused: the request's, or for an early refusal ([`Overload::check`]) the
    /// tenant's last request size.
    pub fixes: u64,
}

/// One poll of the processor group's position on the fixes topic, summed over partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagReading {
    /// Records produced (the high watermarks).
    pub produced: u64,
    /// Records the group committed (its committed offsets; the low watermark where none).
    pub committed: u64,
}

impl LagReading {
    /// Records not stored yet.
    pub fn lag(&self) -> u64 {
        self.produced.saturating_sub(self.committed)
    }
}

/// The overload guard (cheap to clone).
#[derive(Clone)]
pub struct Overload {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Overload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overload")
            .field("bound", &self.inner.bound)
            .field("shedding", &self.inner.shedding.load(Ordering::Relaxed))
            .finish()
    }
}

struct Inner {
    bound: u64,
    floor: f64,
    /// Fast path: false while the limit is lifted.
    shedding: AtomicBool,
    /// Whether each tenant's offered fixes are counted (the lag is near or over the bound).
    tracking: AtomicBool,
    /// Fixes offered since the last poll, every tenant.
    offered: AtomicU64,
    /// Fixes admitted since the last poll, every tenant.
    admitted: AtomicU64,
    state: Mutex<State>,
    metrics: OverloadMetrics,
}

#[derive(Default)]
struct State {
    /// Fixes per second per tenant over its fair share; `None` while nothing is shed.
    limit: Option<f64>,
    tenants: HashMap<Uuid, Tenant>,
    last_reading: Option<LagReading>,
    last_poll: Option<Instant>,
    /// Smoothed offered rate, fixes per second, every tenant.
    offered_rate: f64,
    /// Smoothed drain rate of the store, fixes per second (`None` until two readings).
    drain_rate: Option<f64>,
    /// Smoothed fixes per record of what this instance admitted.
    fixes_per_record: Option<f64>,
    /// When the committed offsets last moved, and to what.
    last_move: Option<(Instant, u64)>,
    /// Smoothed lag, records.
    smoothed_lag: f64,
    labelled: HashSet<Uuid>,
    /// Sheds since the last summary line, and when that was.
    shed_since_summary: u64,
    last_summary: Option<Instant>,
}

/// One tenant's load and bucket.
struct Tenant {
    /// Fixes offered since the last poll (shed ones included).
    offered: f64,
    /// Smoothed offered rate, fixes per second.
    rate: f64,
    /// Fixes of its last request: what an early refusal counts as offered.
    request_size: f64,
    tokens: f64,
    refilled: Instant,
}

impl Tenant {
    fn new(now: Instant) -> Self {
        Self {
            offered: 0.0,
            rate: 0.0,
            request_size: 1.0,
            tokens: f64::NAN,
            refilled: now,
        }
    }

    /// Refill the bucket at `limit` (a fresh bucket starts full) and say whether it is in debt.
    fn in_debt(&mut self, limit: f64, now: Instant) -> bool {
        let burst = limit.max(1.0);
        self.tokens = if self.tokens.is_nan() {
            burst
        } else {
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * limit).min(burst)
        };
        self.refilled = now;
        self.tokens <= 0.0
    }

    /// The wait until the bucket is positive again, at least one second.
    fn retry_after_secs(&self, limit: f64) -> u32 {
        let wait = (-self.tokens / limit).ceil().max(1.0);
        (wait as u32).min(MAX_RETRY_AFTER_SECS)
    }
}

#[derive(Clone)]
struct OverloadMetrics {
    lag: IntGauge,
    bound: IntGauge,
    limit: Gauge,
    drain: Gauge,
    shed: IntCounterVec,
}

impl OverloadMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            lag: register(
                registry,
                IntGauge::new(
                    "gps_ingest_store_lag_records",
                    "Records of the fixes topic the processor group has not committed (the store's backlog)",
                )
                .expect("valid metric"),
            ),
            bound: register(
                registry,
                IntGauge::new(
                    "gps_ingest_shed_bound_records",
                    "Lag over which ingest sheds load (INGEST_SHED_LAG_RECORDS; 0 = off)",
                )
                .expect("valid metric"),
            ),
            limit: register(
                registry,
                Gauge::new(
                    "gps_ingest_shed_tenant_limit_fixes_per_second",
                    "Fixes per second each tenant may send while shedding (0 = not shedding)",
                )
                .expect("valid metric"),
            ),
            drain: register(
                registry,
                Gauge::new(
                    "gps_ingest_store_drain_fixes_per_second",
                    "How fast the processor group commits the fixes topic, in fixes per second (smoothed)",
                )
                .expect("valid metric"),
            ),
            shed: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "gps_ingest_shed_total",
                        "Requests (or UDP datagrams) shed for overload, by tenant (the first 20 tenants shed, then other)",
                    ),
                    &["tenant"],
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// The level at which `rates`, each capped at it, add up to `budget` (max-min fairness);
/// `None` when every rate fits in the budget as it is.
fn water_level(mut rates: Vec<f64>, budget: f64) -> Option<f64> {
    rates.sort_by(f64::total_cmp);
    let mut remaining = budget.max(0.0);
    let count = rates.len();
    for (i, rate) in rates.into_iter().enumerate() {
        let share = remaining / (count - i) as f64;
        if rate > share {
            return Some(share);
        }
        remaining -= rate;
    }
    None
}

/// The factor of the drain rate admitted at `lag`: aims the lag at half the bound.
fn headroom(lag: f64, bound: u64) -> f64 {
    (HEADROOM_AT_ZERO_LAG - lag / bound.max(1) as f64).clamp(HEADROOM_MIN, HEADROOM_MAX)
}

/// Exponential smoothing of `sample` into `previous`.
fn smooth(previous: Option<f64>, sample: f64) -> f64 {
    previous.map_or(sample, |p| {
        RATE_SMOOTHING * sample + (1.0 - RATE_SMOOTHING) * p
    })
}

impl Overload {
    /// A guard shedding over `args.lag_records`, its metrics in `registry`.
    pub fn new(args: &OverloadArgs, registry: &Registry) -> Self {
        let metrics = OverloadMetrics::new(registry);
        metrics
            .bound
            .set(i64::try_from(args.lag_records).unwrap_or(i64::MAX));
        Self {
            inner: Arc::new(Inner {
                bound: args.lag_records,
                floor: args.tenant_floor_per_sec,
                shedding: AtomicBool::new(false),
                tracking: AtomicBool::new(false),
                offered: AtomicU64::new(0),
                admitted: AtomicU64::new(0),
                state: Mutex::new(State::default()),
                metrics,
            }),
        }
    }

    /// Whether shedding is configured at all.
    pub fn enabled(&self) -> bool {
        self.inner.bound > 0
    }

    /// The early decision, before a request's fixes are known (before its body is read): shed
    /// `tenant` when its bucket is in debt, counting its usual request size as offered. A
    /// request that passes still goes through [`Overload::admit`] once decoded.
    pub fn check(&self, tenant: Uuid) -> Result<(), Shed> {
        self.check_at(tenant, Instant::now())
    }

    fn check_at(&self, tenant: Uuid, now: Instant) -> Result<(), Shed> {
        if !self.inner.shedding.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut state = self.lock();
        let Some(limit) = state.limit else {
            return Ok(());
        };
        let Some(load) = state.tenants.get_mut(&tenant) else {
            // Unknown so far: it offered nothing lately, so it is under its fair share.
            return Ok(());
        };
        if !load.in_debt(limit, now) {
            return Ok(());
        }
        let cost = load.request_size;
        load.offered += cost;
        let shed = Shed {
            retry_after_secs: load.retry_after_secs(limit),
            fixes: cost as u64,
        };
        self.inner.offered.fetch_add(cost as u64, Ordering::Relaxed);
        self.count_shed(state, tenant);
        Err(shed)
    }

    /// Let `fixes` of `tenant` through, or shed them (the caller answers 503 or drops).
    pub fn admit(&self, tenant: Uuid, fixes: usize) -> Result<(), Shed> {
        self.admit_at(tenant, fixes, Instant::now())
    }

    fn admit_at(&self, tenant: Uuid, fixes: usize, now: Instant) -> Result<(), Shed> {
        let cost = fixes.max(1) as f64;
        self.inner.offered.fetch_add(cost as u64, Ordering::Relaxed);
        let shedding = self.inner.shedding.load(Ordering::Relaxed);
        if !shedding && !self.inner.tracking.load(Ordering::Relaxed) {
            self.inner
                .admitted
                .fetch_add(cost as u64, Ordering::Relaxed);
            return Ok(());
        }
        let mut state = self.lock();
        let limit = state.limit.filter(|_| shedding);
        let load = state
            .tenants
            .entry(tenant)
            .or_insert_with(|| Tenant::new(now));
        load.offered += cost;
        load.request_size = cost;
        let Some(limit) = limit else {
            drop(state);
            self.inner
                .admitted
                .fetch_add(cost as u64, Ordering::Relaxed);
            return Ok(());
        };
        // A tenant under its fair share never meets the level; a bucket at the level only
        // bites on those over it.
        if !load.in_debt(limit, now) {
            load.tokens -= cost;
            drop(state);
            self.inner
                .admitted
                .fetch_add(cost as u64, Ordering::Relaxed);
            return Ok(());
        }
        let shed = Shed {
            retry_after_secs: load.retry_after_secs(limit),
            fixes: cost as u64,
        };
        self.count_shed(state, tenant);
        Err(shed)
    }

    /// Count a shed of `tenant` in the metric (no log line per shed: see [`SUMMARY_EVERY`]).
    fn count_shed(&self, mut state: std::sync::MutexGuard<'_, State>, tenant: Uuid) {
        state.shed_since_summary += 1;
        let label = if state.labelled.contains(&tenant) || state.labelled.len() < LABELLED_TENANTS {
            state.labelled.insert(tenant);
            tenant.to_string()
        } else {
            "other".to_owned()
        };
        drop(state);
        self.inner.metrics.shed.with_label_values(&[&label]).inc();
    }

    /// Take one reading (`None`: the poll failed, the limit is held) and move the limit.
    pub fn observe(&self, reading: Option<LagReading>) {
        self.observe_at(reading, Instant::now());
    }

    fn observe_at(&self, reading: Option<LagReading>, now: Instant) {
        let offered = self.inner.offered.swap(0, Ordering::Relaxed) as f64;
        let admitted = self.inner.admitted.swap(0, Ordering::Relaxed) as f64;
        let mut state = self.lock();
        let seconds = state
            .last_poll
            .map(|last| now.duration_since(last).as_secs_f64().max(0.001));
        state.last_poll = Some(now);
        if let Some(seconds) = seconds {
            state.offered_rate = smooth(Some(state.offered_rate), offered / seconds);
            for load in state.tenants.values_mut() {
                load.rate = smooth(Some(load.rate), load.offered / seconds);
                load.offered = 0.0;
            }
            state.tenants.retain(|_, load| load.rate >= IDLE_RATE);
        }
        let Some(reading) = reading else {
            return;
        };
        let lag = reading.lag();
        self.inner
            .metrics
            .lag
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
        // Caught up: what is left is no more than what arrived since the last poll.
        let mut caught_up = false;
        if let (Some(previous), Some(_)) = (state.last_reading, seconds) {
            let produced = reading.produced.saturating_sub(previous.produced);
            if produced > 0 && admitted > 0.0 {
                state.fixes_per_record =
                    Some(smooth(state.fixes_per_record, admitted / produced as f64));
            }
            caught_up = lag <= produced;
        }
        self.measure_drain(&mut state, reading, caught_up, now);
        // The lag the budget steers by, smoothed: it swings by a processor batch each commit.
        state.smoothed_lag = smooth(state.last_reading.map(|_| state.smoothed_lag), lag as f64);
        state.last_reading = Some(reading);
        self.inner
            .metrics
            .drain
            .set(state.drain_rate.unwrap_or(0.0));

        let bound = self.inner.bound;
        state.limit = if lag <= bound && state.limit.is_none() {
            None
        } else {
            // Before a drain rate is known: half of everything offered.
            let budget = state.drain_rate.map_or(state.offered_rate * 0.5, |drain| {
                drain * headroom(state.smoothed_lag, bound)
            });
            let rates = state.tenants.values().map(|load| load.rate).collect();
            match water_level(rates, budget) {
                // Everything offered fits and the lag is down: done.
                None if lag <= bound / 2 => None,
                level => Some(level.unwrap_or(budget).max(self.inner.floor)),
            }
        };
        if state.limit.is_none() {
            for load in state.tenants.values_mut() {
                load.tokens = f64::NAN;
            }
        }
        self.inner
            .shedding
            .store(state.limit.is_some(), Ordering::Relaxed);
        self.inner
            .tracking
            .store(state.limit.is_some() || lag > bound / 4, Ordering::Relaxed);
        self.inner.metrics.limit.set(state.limit.unwrap_or(0.0));
        self.summarize(&mut state, lag, now);
    }

    /// Update the drain rate from the committed offsets: a sample over the span since they last
    /// moved, taken when they move again; an equal reading is no news (the processor commits
    /// once per batch) unless they have not moved for [`STALL_AFTER`].
    fn measure_drain(&self, state: &mut State, reading: LagReading, caught_up: bool, now: Instant) {
        let Some((moved_at, committed_then)) = state.last_move else {
            state.last_move = Some((now, reading.committed));
            return;
        };
        let span = now.duration_since(moved_at).as_secs_f64().max(0.001);
        if reading.committed != committed_then {
            let drained = reading.committed.saturating_sub(committed_then) as f64;
            let sample = drained / span * state.fixes_per_record.unwrap_or(1.0);
            state.drain_rate = Some(match state.drain_rate {
                // A store that caught up drained all there was: a lower bound of what it can.
                Some(drain) if caught_up => drain.max(sample),
                drain => smooth(drain, sample),
            });
            state.last_move = Some((now, reading.committed));
        } else if now.duration_since(moved_at) >= STALL_AFTER {
            state.drain_rate = Some(smooth(state.drain_rate, 0.0));
        }
    }

    /// The rate-limited summary of the sheds since the last one.
    fn summarize(&self, state: &mut State, lag: u64, now: Instant) {
        if state.shed_since_summary == 0
            || state
                .last_summary
                .is_some_and(|last| now.duration_since(last) < SUMMARY_EVERY)
        {
            return;
        }
        tracing::warn!(
            shed = state.shed_since_summary,
            lag,
            limit = state.limit,
            drain = state.drain_rate,
            "shedding load: requests refused for overload since the last summary"
        );
        state.shed_since_summary = 0;
        state.last_summary = Some(now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reads the processor group's position on the fixes topic from the broker.
pub struct LagMonitor {
    consumer: Arc<BaseConsumer>,
    topic: String,
    timeout: Duration,
}

impl LagMonitor {
    /// A monitor of `group` on the fixes topic (no broker round trip yet; it never joins the
    /// group, it only reads its committed offsets).
    pub fn new(kafka: &KafkaArgs, group: &str, timeout: Duration) -> Result<Self, KafkaError> {
        let mut config = gps_runtime::kafka::client_config(kafka, "gps-ingest-lag");
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        Ok(Self {
            consumer: Arc::new(config.create()?),
            topic: kafka.fixes_topic.clone(),
            timeout,
        })
    }

    /// The position now (blocking: call from a blocking task).
    fn reading_blocking(
        consumer: &BaseConsumer,
        topic: &str,
        timeout: Duration,
    ) -> Result<LagReading, KafkaError> {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let mut partitions = TopicPartitionList::new();
        for t in metadata.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                partitions.add_partition(topic, p.id());
            }
        }
        let committed = consumer.committed_offsets(partitions, timeout)?;
        let mut reading = LagReading {
            produced: 0,
            committed: 0,
        };
        for element in committed.elements() {
            let (low, high) = consumer.fetch_watermarks(topic, element.partition(), timeout)?;
            let from = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => low,
            };
            reading.produced += u64::try_from(high).unwrap_or(0);
            reading.committed += u64::try_from(from.min(high)).unwrap_or(0);
        }
        Ok(reading)
    }

    /// The position now.
    pub async fn reading(&self) -> Result<LagReading, KafkaError> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || Self::reading_blocking(&consumer, &topic, timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Feed `overload` a reading every `interval` until `stop`.
    pub async fn run(self, overload: Overload, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Warn once per outage, not once per poll.
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let reading = match self.reading().await {
                Ok(reading) => {
                    if failing {
                        tracing::info!(lag = reading.lag(), "store lag poll works again");
                    }
                    failing = false;
                    Some(reading)
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "store lag poll failed; shedding state held");
                    }
                    failing = true;
                    None
                }
            };
            overload.observe(reading);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn guard(bound: u64, floor: f64) -> Overload {
        let args = OverloadArgs {
            lag_records: bound,
            group: None,
            poll_ms: 1_000,
            tenant_floor_per_sec: floor,
        };
        Overload::new(&args, &Registry::new())
    }

    /// `n` seconds after `start`.
    fn at(start: Instant, n: u64) -> Instant {
        start + Duration::from_secs(n)
    }

    fn reading(produced: u64, committed: u64) -> Option<LagReading> {
        Some(LagReading {
            produced,
            committed,
        })
    }

    /// A tenant's load: requests per second of `fixes` each.
    #[derive(Clone, Copy)]
    struct Load {
        tenant: Uuid,
        requests: u32,
        fixes: usize,
    }

    /// The guard in front of a simulated store that stores `capacity` fixes a second and
    /// commits every `commit_every` seconds; one poll a second.
    struct Sim {
        overload: Overload,
        start: Instant,
        second: u64,
        queue: VecDeque<usize>,
        produced: u64,
        committed: u64,
        capacity: usize,
        credit: usize,
        commit_every: u64,
        sheds: HashMap<Uuid, u64>,
        peak_lag: u64,
    }

    impl Sim {
        fn new(overload: Overload, capacity: usize, commit_every: u64) -> Self {
            let start = Instant::now();
            overload.observe_at(reading(0, 0), start);
            Self {
                overload,
                start,
                second: 0,
                queue: VecDeque::new(),
                produced: 0,
                committed: 0,
                capacity,
                credit: 0,
                commit_every,
                sheds: HashMap::new(),
                peak_lag: 0,
            }
        }

        /// One second of `loads`, spread evenly, then the store's work and a poll.
        fn run(&mut self, loads: &[Load]) {
            let slots = loads.iter().map(|l| l.requests).max().unwrap_or(0);
            for slot in 0..slots {
                let now = at(self.start, self.second)
                    + Duration::from_secs_f64(f64::from(slot) / f64::from(slots));
                for load in loads.iter().filter(|l| slot < l.requests) {
                    match self.overload.admit_at(load.tenant, load.fixes, now) {
                        Ok(()) => {
                            self.queue.push_back(load.fixes);
                            self.produced += 1;
                        }
                        Err(_) => *self.sheds.entry(load.tenant).or_default() += 1,
                    }
                }
            }
            self.second += 1;
            self.credit += self.capacity;
            if self.second % self.commit_every == 0 {
                while let Some(&fixes) = self.queue.front() {
                    if fixes > self.credit {
                        break;
                    }
                    self.credit -= fixes;
                    self.committed += 1;
                    self.queue.pop_front();
                }
                if self.queue.is_empty() {
                    self.credit = 0;
                }
            }
            let lag = self.produced - self.committed;
            self.peak_lag = self.peak_lag.max(lag);
            self.overload.observe_at(
                reading(self.produced, self.committed),
                at(self.start, self.second),
            );
        }

        fn sheds(&self, tenant: Uuid) -> u64 {
            self.sheds.get(&tenant).copied().unwrap_or(0)
        }

        fn limit(&self) -> Option<f64> {
            self.overload.lock().limit
        }
    }

    /// One noisy tenant (20,000 fixes/s in batches of 100) and three quiet ones (1,000 fixes/s
    /// in batches of 10), the load of `loadgen overload` at its top, run for `seconds` against
    /// a store taking 10,000 fixes/s that commits every `commit_every` seconds.
    struct Scenario {
        sim: Sim,
        noisy: Load,
        quiet: Vec<Load>,
        all: Vec<Load>,
    }

    impl Scenario {
        fn run(bound: u64, commit_every: u64, seconds: u64) -> Self {
            let noisy = Load {
                tenant: Uuid::new_v4(),
                requests: 200,
                fixes: 100,
            };
            let quiet: Vec<Load> = (0..3)
                .map(|_| Load {
                    tenant: Uuid::new_v4(),
                    requests: 100,
                    fixes: 10,
                })
                .collect();
            let all = quiet.iter().copied().chain([noisy]).collect();
            let mut scenario = Self {
                sim: Sim::new(guard(bound, 1.0), 10_000, commit_every),
                noisy,
                quiet,
                all,
            };
            scenario.more(seconds);
            scenario
        }

        /// `seconds` more of the whole load.
        fn more(&mut self, seconds: u64) {
            for _ in 0..seconds {
                self.sim.run(&self.all);
            }
        }

        fn quiet_sheds(&self) -> u64 {
            self.quiet.iter().map(|l| self.sim.sheds(l.tenant)).sum()
        }
    }

    #[test]
    fn water_level_shares_the_budget_max_min_fairly() {
        let rates = vec![1_000.0, 20_000.0, 1_000.0, 1_000.0];
        assert_eq!(water_level(rates.clone(), 10_000.0), Some(7_000.0));
        assert_eq!(water_level(rates.clone(), 2_000.0), Some(500.0));
        assert_eq!(water_level(rates.clone(), 23_000.0), None, "all fit");
        assert_eq!(water_level(Vec::new(), 0.0), None);
    }

    #[test]
    fn nothing_is_shed_while_the_lag_is_under_the_bound() {
        let overload = guard(100, 1.0);
        let (start, noisy) = (Instant::now(), Uuid::new_v4());
        overload.observe_at(reading(0, 0), start);
        for _ in 0..1_000 {
            assert!(overload.admit_at(noisy, 100, at(start, 0)).is_ok());
        }
        overload.observe_at(reading(100, 0), at(start, 1));
        assert!(overload.admit_at(noisy, 100, at(start, 1)).is_ok());
        assert!(overload.check_at(noisy, at(start, 1)).is_ok());
        assert!(!overload.inner.shedding.load(Ordering::Relaxed));
    }

    #[test]
    fn a_quiet_tenant_under_its_fair_share_is_never_shed_while_a_noisy_one_is() {
        // The store takes 10,000 fixes/s of the 23,000 offered.
        let mut load = Scenario::run(300, 1, 20);
        load.sim.peak_lag = 0;
        load.more(40);
        assert!(
            load.sim.sheds(load.noisy.tenant) > 1_000,
            "the noisy tenant is shed"
        );
        assert_eq!(load.quiet_sheds(), 0, "a quiet tenant is not shed");
        let limit = load.sim.limit().expect("still shedding");
        assert!(
            limit > 1_000.0,
            "the fair share ({limit}) is above a quiet tenant's rate"
        );
        let peak = load.sim.peak_lag;
        assert!(
            peak < 2 * 300,
            "the lag stays under twice the bound (peak {peak})"
        );
    }

    #[test]
    fn repeated_equal_lag_readings_do_not_collapse_the_limit() {
        // The store commits every 3 s: two of every three readings repeat the last one (and a
        // commit cycle's records, ~1,000, are the bound).
        let mut load = Scenario::run(1_000, 3, 30);
        let mut lowest = f64::INFINITY;
        for _ in 0..30 {
            load.more(1);
            lowest = lowest.min(load.sim.limit().expect("shedding"));
        }
        assert!(
            lowest > 1_000.0,
            "the limit held above the quiet rate ({lowest})"
        );
        assert_eq!(load.quiet_sheds(), 0, "a quiet tenant is not shed");
    }

    #[test]
    fn shedding_ends_once_the_lag_drains() {
        let mut load = Scenario::run(300, 1, 30);
        assert!(load.sim.limit().is_some(), "shedding under load");
        // The noisy tenant stops; the quiet ones go on.
        for _ in 0..30 {
            load.sim.run(&load.quiet);
        }
        let sim = &load.sim;
        assert_eq!(sim.limit(), None, "lifted");
        assert!(!sim.overload.inner.shedding.load(Ordering::Relaxed));
        assert_eq!(sim.produced - sim.committed, 0, "drained");
        let now = at(sim.start, sim.second);
        assert!(sim
            .overload
            .admit_at(load.noisy.tenant, 100_000, now)
            .is_ok());
    }

    #[test]
    fn a_stalled_store_sheds_down_to_the_floor() {
        let overload = guard(10, 5.0);
        let (start, noisy, quiet) = (Instant::now(), Uuid::new_v4(), Uuid::new_v4());
        overload.observe_at(reading(0, 0), start);
        // Nothing is ever committed: the drain rate decays to 0, the limit to the floor.
        for second in 1..=30 {
            for _ in 0..100 {
                let _ = overload.admit_at(noisy, 10, at(start, second - 1));
            }
            overload.observe_at(reading(second * 100, 0), at(start, second));
        }
        assert_eq!(overload.lock().limit, Some(5.0), "floored");
        assert!(
            overload.admit_at(quiet, 5, at(start, 30)).is_ok(),
            "a tenant within the floor passes"
        );
        let shed = (0..10)
            .find_map(|_| overload.admit_at(noisy, 10, at(start, 30)).err())
            .expect("the noisy tenant is shed");
        assert!((1..=MAX_RETRY_AFTER_SECS).contains(&shed.retry_after_secs));
    }

    #[test]
    fn the_early_check_refuses_a_tenant_in_debt_without_charging_the_others() {
        let overload = guard(10, 1.0);
        let (start, noisy, quiet) = (Instant::now(), Uuid::new_v4(), Uuid::new_v4());
        overload.observe_at(reading(0, 0), start);
        for _ in 0..1_000 {
            overload.admit_at(noisy, 10, at(start, 0)).unwrap();
        }
        overload.admit_at(quiet, 1, at(start, 0)).unwrap();
        overload.observe_at(reading(1_001, 0), at(start, 1));
        overload.observe_at(reading(1_001, 0), at(start, 2));
        assert!(overload.lock().limit.is_some(), "shedding");
        while overload.admit_at(noisy, 10, at(start, 2)).is_ok() {}
        let shed = overload.check_at(noisy, at(start, 2)).unwrap_err();
        assert!(shed.retry_after_secs >= 1);
        // Checks cost nothing: a tenant checked many times is still admitted.
        for _ in 0..1_000 {
            assert!(overload.check_at(quiet, at(start, 2)).is_ok());
        }
        assert!(overload.admit_at(quiet, 1, at(start, 2)).is_ok());
    }

    #[test]
    fn the_limit_holds_when_the_poll_fails() {
        let load = Scenario::run(300, 1, 20);
        let limit = load.sim.limit().expect("shedding");
        let sim = &load.sim;
        sim.overload.observe_at(None, at(sim.start, sim.second + 1));
        assert_eq!(sim.limit(), Some(limit), "a failed poll holds it");
    }
}
